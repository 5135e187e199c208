//! The layout of the PPN Fabric node image: the one source of truth for the seL4 Microkit
//! protection domains (PDs) and their system description (SDF).
//!
//! Everything the image's isolation rests on is here as const data:
//! - [`PDS`]: the protection domains, their priorities and program images;
//! - [`REGIONS`]: the memory regions, their sizes, whether they hold secrets, and which device
//!   (if any) they belong to;
//! - [`MAPPINGS`]: which PD maps which region, at which virtual address, with which permissions;
//! - [`DEVICES`] and [`IRQS`]: the devices of QEMU `virt` (virtio-mmio ones and the real-time
//!   clock), the PD that drives each, and the interrupts PDs receive;
//! - [`CHANNELS`]: the channels between PDs, with each end's channel id;
//! - [`SETVARS`]: the symbols Microkit patches with a DMA region's physical address;
//! - [`ROUTES`]: which PD serves which wire service.
//!
//! The PD code uses the per-PD modules ([`link`], [`ledger`], [`lender`], [`attest`]) for its channel ids,
//! addresses and sizes. `sdf/qemu_virt_aarch64.system` is written by hand and checked against these tables by
//! `ppn sdf check` (crate `ppn-sdf`), so the SDF and the code cannot drift apart unnoticed.
//! [`buffer`] is the layout of the request/response buffer a service PD shares with `link`;
//! [`ledger_port`] is the tiny protocol the `lender` and `attest` PDs speak to the `ledger` PD.
//! `docs/sdf.md` draws the picture and says why each PD may touch what it touches.
//!
//! The unit tests hold the layout to its own rules: no two mappings overlap in one PD, every
//! secret region is mapped into exactly one PD, a handoff region only into PDs that hold
//! secrets, every device region only into its driver,
//! channel ids are unique per PD and within Microkit's range, sizes are page multiples, and a
//! protected procedure call only goes to a PD of strictly higher priority.
#![no_std]
#![forbid(unsafe_code)]

pub mod ledger_port;

use core::fmt;
use ppn_wire::frame::MAX_FRAME_LEN;
use ppn_wire::kind::Service;

/// The Microkit board this layout is for.
pub const BOARD: &str = "qemu_virt_aarch64";

/// The smallest page size on AArch64 (Microkit also has 2 MiB pages; this layout uses 4 KiB).
/// Every region size, physical address and virtual address here is a multiple of it.
pub const PAGE_SIZE: u64 = 0x1000;

/// A channel id, as one PD sees a channel or an interrupt. Microkit shares one id space per PD
/// between channel ends and IRQs.
pub type ChannelId = u8;

/// The largest channel id Microkit 2.3.0 accepts. Its manual says ids are "less than 63", but
/// the tool (`tool/microkit/src/sdf.rs`, `PD_MAX_ID = 61`: two of the 64 badge bits mark PPCs and
/// faults) refuses 62, so the layout keeps to 0..=61.
pub const MAX_CHANNEL_ID: ChannelId = 61;
const _: () = assert!(MAX_CHANNEL_ID < 63, "Microkit channel ids are 0..63 per PD");

/// The highest priority a PD may have (Microkit's monitor runs at 255).
pub const MAX_PRIORITY: u8 = 254;

/// Microkit's stack size for a PD whose `protection_domain` element has no `stack_size`.
pub const MICROKIT_DEFAULT_STACK_SIZE: u64 = 0x2000;

/// Every mapping's virtual address is at or above this, so the regions never collide with a
/// program image (Microkit loads an ELF where it was linked, conventionally from `0x200000`).
/// Program images, their `.bss` heaps included, must stay below it.
pub const MAP_FLOOR: u64 = 0x1000_0000;

/// A protection domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pd {
    /// The PD's name in the SDF.
    pub name: &'static str,
    /// Scheduling priority (0..=254). A PD may only call (PPC) a PD of strictly higher priority.
    pub priority: u8,
    /// The stack Microkit maps for the PD, in bytes.
    pub stack_size: u64,
    /// The ELF file name; `microkit` finds it in its `--search-path`.
    pub program_image: &'static str,
    /// Whether the PD holds TCB secrets (keys, seeds, ledger state). A PD that does not may map
    /// no secret region.
    pub holds_secrets: bool,
    /// What the PD does, for docs and error messages.
    pub role: &'static str,
}

/// Mapping permissions, as Microkit's `perms` attribute (any of `r`, `w`, `x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

impl Perms {
    /// Read only.
    pub const R: Perms = Perms { read: true, write: false, execute: false };
    /// Read and write: Microkit's default when `perms` is absent.
    pub const RW: Perms = Perms { read: true, write: true, execute: false };

    /// Parses a `perms` value as Microkit 2.3.0 does: every character is `r`, `w` or `x`
    /// (repeats allowed, the empty string is no permission). `None` for any other character.
    pub fn parse(s: &str) -> Option<Perms> {
        let mut p = Perms { read: false, write: false, execute: false };
        for c in s.chars() {
            match c {
                'r' => p.read = true,
                'w' => p.write = true,
                'x' => p.execute = true,
                _ => return None,
            }
        }
        Some(p)
    }

    /// Whether Microkit accepts these permissions: the kernel has no write-only mappings.
    pub const fn microkit_accepts(self) -> bool {
        !(self.write && !self.read && !self.execute)
    }

    /// The canonical spelling (`r`, `rw`, `rx`, ...; `-` for none).
    pub const fn as_str(self) -> &'static str {
        match (self.read, self.write, self.execute) {
            (true, true, true) => "rwx",
            (true, true, false) => "rw",
            (true, false, true) => "rx",
            (true, false, false) => "r",
            (false, true, true) => "wx",
            (false, true, false) => "w",
            (false, false, true) => "x",
            (false, false, false) => "-",
        }
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an interrupt line signals (Microkit's `trigger` attribute; its default is level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    Level,
    Edge,
}

impl Trigger {
    /// Microkit's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Level => "level",
            Trigger::Edge => "edge",
        }
    }

    /// Parses Microkit's spelling.
    pub fn parse(s: &str) -> Option<Trigger> {
        match s {
            "level" => Some(Trigger::Level),
            "edge" => Some(Trigger::Edge),
            _ => None,
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// QEMU's `virt` machine (AArch64), from QEMU's `hw/arm/virt.c`.
pub mod qemu_virt {
    use super::Trigger;

    /// `VIRT_MMIO` in `base_memmap`: the first virtio-mmio transport.
    pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
    /// Bytes of one transport's register window; transport `n` is at `BASE + n * SIZE`.
    pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
    /// `NUM_VIRTIO_TRANSPORTS`: QEMU always creates all 32, empty ones read device id 0.
    pub const VIRTIO_MMIO_TRANSPORTS: u8 = 32;
    /// `a15irqmap[VIRT_MMIO]`: transport `n` raises SPI `16 + n`.
    pub const VIRTIO_MMIO_FIRST_SPI: u32 = 16;
    /// GIC interrupt id of SPI 0. seL4 (and so Microkit's `irq` attribute) numbers interrupts by
    /// GIC id, so transport `n` is IRQ `32 + 16 + n` = `48 + n`.
    pub const GIC_FIRST_SPI_ID: u32 = 32;
    /// QEMU's device tree gives virtio-mmio interrupts as `GIC_FDT_IRQ_FLAGS_EDGE_LO_HI`.
    pub const VIRTIO_MMIO_TRIGGER: Trigger = Trigger::Edge;
    /// Microkit's `qemu_virt_aarch64` board: 2 GiB of RAM from here (the kernel is built for it).
    pub const RAM_BASE: u64 = 0x4000_0000;
    /// See [`RAM_BASE`].
    pub const RAM_SIZE: u64 = 0x8000_0000;

    /// `VIRT_RTC` in `base_memmap`: the PL031 real-time clock, alone in its page.
    pub const RTC_PADDR: u64 = 0x0901_0000;
    /// `a15irqmap[VIRT_RTC]`: SPI 2, GIC id 34.
    pub const RTC_IRQ: u32 = GIC_FIRST_SPI_ID + 2;

    /// Physical address of transport `n`'s registers.
    pub const fn virtio_mmio_addr(transport: u8) -> u64 {
        VIRTIO_MMIO_BASE + transport as u64 * VIRTIO_MMIO_SIZE
    }

    /// The interrupt (GIC id) of transport `n`.
    pub const fn virtio_mmio_irq(transport: u8) -> u32 {
        GIC_FIRST_SPI_ID + VIRTIO_MMIO_FIRST_SPI + transport as u32
    }
}

/// Where a device sits on QEMU's `virt` machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// A virtio device on virtio-mmio transport `transport` (0..32). QEMU must be told
    /// `-device MODEL,bus=virtio-mmio-bus.TRANSPORT`: without `bus=`, QEMU fills the transports
    /// from the highest address down.
    VirtioMmio {
        transport: u8,
        /// The QEMU `-device` model that must sit on this transport.
        qemu_device: &'static str,
    },
    /// A device the machine always has, at a fixed address with a fixed interrupt.
    Builtin { paddr: u64, irq: u32 },
}

/// A device on QEMU `virt`, driven by exactly one PD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// A short name (`console`, `blk`, `rng`, `rtc`).
    pub name: &'static str,
    pub bus: Bus,
    /// The only PD that may touch the device's registers, DMA memory and interrupt.
    pub driver: &'static Pd,
}

impl Device {
    /// Physical address of the device's registers.
    pub const fn regs_paddr(&self) -> u64 {
        match self.bus {
            Bus::VirtioMmio { transport, .. } => qemu_virt::virtio_mmio_addr(transport),
            Bus::Builtin { paddr, .. } => paddr,
        }
    }

    /// The page that holds the registers: what the SDF maps (8 transports share a page).
    pub const fn page_paddr(&self) -> u64 {
        self.regs_paddr() & !(PAGE_SIZE - 1)
    }

    /// Offset of the registers in that page.
    pub const fn page_offset(&self) -> u64 {
        self.regs_paddr() & (PAGE_SIZE - 1)
    }

    /// The device's interrupt (GIC id, as the SDF's `irq` attribute).
    pub const fn irq(&self) -> u32 {
        match self.bus {
            Bus::VirtioMmio { transport, .. } => qemu_virt::virtio_mmio_irq(transport),
            Bus::Builtin { irq, .. } => irq,
        }
    }

    /// The virtio-mmio transport, for a virtio device.
    pub const fn transport(&self) -> Option<u8> {
        match self.bus {
            Bus::VirtioMmio { transport, .. } => Some(transport),
            Bus::Builtin { .. } => None,
        }
    }

    /// The QEMU `-device` model to put on the transport, for a virtio device.
    pub const fn qemu_device(&self) -> Option<&'static str> {
        match self.bus {
            Bus::VirtioMmio { qemu_device, .. } => Some(qemu_device),
            Bus::Builtin { .. } => None,
        }
    }
}

/// What a memory region is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Ordinary RAM: zeroed at boot, placed by the Microkit tool, not necessarily contiguous.
    Ram,
    /// A device's register page, at its fixed physical address (mapped uncached).
    Mmio { device: &'static Device },
    /// RAM the device reads and writes by DMA. The tool picks its (contiguous) physical address
    /// and writes it into the driver's symbol `paddr_symbol` (an SDF `setvar region_paddr`).
    Dma { device: &'static Device, paddr_symbol: &'static str },
}

/// A memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The region's name in the SDF.
    pub name: &'static str,
    /// Bytes; a multiple of [`PAGE_SIZE`].
    pub size: u64,
    /// Holds TCB secrets (key material, ledger state): it may be mapped into exactly one PD.
    pub secret: bool,
    /// Carries a secret from one secret-holding PD to another (the attestation key's handoff,
    /// [`ledger_port::Op::AttestKey`]): it may be mapped only into the PDs the layout gives it,
    /// each of which holds secrets.
    pub handoff: bool,
    pub kind: RegionKind,
    /// What the region holds, for docs and error messages.
    pub purpose: &'static str,
}

impl Region {
    /// The fixed physical address the SDF gives (`phys_addr`): device pages only.
    pub const fn phys_addr(&self) -> Option<u64> {
        match self.kind {
            RegionKind::Mmio { device } => Some(device.page_paddr()),
            RegionKind::Ram | RegionKind::Dma { .. } => None,
        }
    }

    /// The device the region belongs to (registers or DMA memory), if any.
    pub const fn device(&self) -> Option<&'static Device> {
        match self.kind {
            RegionKind::Mmio { device } | RegionKind::Dma { device, .. } => Some(device),
            RegionKind::Ram => None,
        }
    }
}

/// One region mapped into one PD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub pd: &'static Pd,
    pub region: &'static Region,
    /// Virtual address in `pd`; page aligned and at least [`MAP_FLOOR`].
    pub vaddr: u64,
    pub perms: Perms,
    /// `false` for device registers.
    pub cached: bool,
}

impl Mapping {
    /// One past the last mapped byte.
    pub const fn end(&self) -> u64 {
        self.vaddr + self.region.size
    }
}

/// One end of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub pd: &'static Pd,
    /// The id by which `pd` names the channel.
    pub id: ChannelId,
    /// `pd` may call the other end's protected procedure (Microkit's default: no).
    pub pp: bool,
    /// `pd` may notify the other end (Microkit's default: yes).
    pub notify: bool,
}

/// A channel between two PDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    pub a: End,
    pub b: End,
    pub purpose: &'static str,
}

/// A hardware interrupt delivered to a PD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Irq {
    pub pd: &'static Pd,
    pub device: &'static Device,
    /// The id by which `pd` names the interrupt (shared id space with its channels).
    pub id: ChannelId,
    pub trigger: Trigger,
}

impl Irq {
    /// The interrupt number (GIC id) in the SDF.
    pub const fn irq(&self) -> u32 {
        self.device.irq()
    }
}

/// A symbol in a PD's program image that Microkit patches with a region's physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setvar {
    pub pd: &'static Pd,
    pub symbol: &'static str,
    pub region: &'static Region,
}

/// Which PD serves a wire service, and the channel `link` calls it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub service: Service,
    pub pd: &'static Pd,
    /// `link`'s id of the channel to `pd`.
    pub link_channel: ChannelId,
    /// The buffer `link` and `pd` share.
    pub buffer: &'static Region,
}

/// The protection domains.
pub mod pds {
    use super::Pd;

    /// The link: the byte stream to the proxy. Lowest priority: it calls every service PD.
    pub const LINK: Pd = Pd {
        name: "link",
        priority: 100,
        stack_size: 0x4000,
        program_image: "link.elf",
        holds_secrets: false,
        role: "owns the virtio-console byte stream to the proxy, COBS-deframes, routes each request \
               frame to the PD that owns its service, frames the reply; holds no secrets",
    };

    /// The ledger: node identity and the capability ledger.
    pub const LEDGER: Pd = Pd {
        name: "ledger",
        priority: 150,
        stack_size: 0x10_0000,
        program_image: "ledger.elf",
        holds_secrets: true,
        role: "serves the node and ledger services: identity seed and keys, tokens, signed \
               records; its log on virtio-blk, its entropy from virtio-rng",
    };

    /// The memory lender: the pool of lendable blocks, its journal on a disk of its own. Between
    /// `link` (which calls it) and `ledger` (which it calls for tokens, trust and the time).
    pub const LENDER: Pd = Pd {
        name: "lender",
        priority: 125,
        stack_size: 0x10_0000,
        program_image: "lender.elf",
        holds_secrets: false,
        role: "serves the lender service: the pool's blocks and leases, its journal on a virtio-blk \
               disk of its own; asks ledger for lease tokens, trust and revocations; no keys",
    };

    /// The attestation PD: the node's attestation key, provisioning statements and reports.
    /// Between `link` (which calls it) and `ledger` (which it calls once for its key, and for the
    /// time).
    pub const ATTEST: Pd = Pd {
        name: "attest",
        priority: 130,
        stack_size: 0x4_0000,
        program_image: "attest.elf",
        holds_secrets: true,
        role: "serves the attest service: signs provisioning statements and attestation reports with \
               the node's attestation key, which it alone holds once ledger has handed it over at start",
    };
}

/// The devices. The virtio devices sit one per virtio-mmio transport, each transport in a page of
/// its own (transports 0, 8 and 16 start pages 0x0a000000, 0x0a001000, 0x0a002000), so that
/// mapping one device's page never exposes another device.
pub mod devices {
    use super::{Bus, Device, pds, qemu_virt};

    /// The virtio-console carrying the wire protocol's COBS stream to the proxy.
    pub const CONSOLE: Device = Device {
        name: "console",
        bus: Bus::VirtioMmio { transport: 0, qemu_device: "virtio-serial-device" },
        driver: &pds::LINK,
    };
    /// The virtio-blk disk holding the node and ledger journals.
    pub const BLK: Device = Device {
        name: "blk",
        bus: Bus::VirtioMmio { transport: 8, qemu_device: "virtio-blk-device" },
        driver: &pds::LEDGER,
    };
    /// The virtio-rng entropy source for key generation.
    pub const RNG: Device = Device {
        name: "rng",
        bus: Bus::VirtioMmio { transport: 16, qemu_device: "virtio-rng-device" },
        driver: &pds::LEDGER,
    };
    /// The machine's real-time clock (an Arm PL031): the ledger's wall clock, which decides
    /// token expiry. Read only; its interrupt is not used.
    pub const RTC: Device = Device {
        name: "rtc",
        bus: Bus::Builtin { paddr: qemu_virt::RTC_PADDR, irq: qemu_virt::RTC_IRQ },
        driver: &pds::LEDGER,
    };
    /// The lender's own virtio-blk disk: its journal (`lender_disk`). Out of the ledger's reach,
    /// as the ledger's disk is out of the lender's.
    pub const LENDER_BLK: Device = Device {
        name: "lender_blk",
        bus: Bus::VirtioMmio { transport: 24, qemu_device: "virtio-blk-device" },
        driver: &pds::LENDER,
    };
}

/// The memory regions.
pub mod regions {
    use super::{RegionKind, attest, buffer, devices, ledger, ledger_port, lender, link};
    use crate::Region;

    /// The request/response buffer of `link` and `ledger` (layout: [`buffer`](crate::buffer)).
    pub const LINK_LEDGER_BUFFER: Region = Region {
        name: "link_ledger_buffer",
        size: buffer::SIZE,
        secret: false,
        handoff: false,
        kind: RegionKind::Ram,
        purpose: "one request frame from link, then the ledger's response frame",
    };
    /// The ledger's heap: identity seed, keys, the record DAG, revocation sets.
    pub const LEDGER_STATE: Region = Region {
        name: "ledger_state",
        size: 0x40_0000,
        secret: true,
        handoff: false,
        kind: RegionKind::Ram,
        purpose: "the ledger PD's heap: identity seed, signing and grant keys, ledger state",
    };
    /// The console's registers.
    pub const LINK_CONSOLE_MMIO: Region = Region {
        name: "link_console_mmio",
        size: 0x1000,
        secret: false,
        handoff: false,
        kind: RegionKind::Mmio { device: &devices::CONSOLE },
        purpose: "virtio-mmio registers of the console",
    };
    /// The console's virtqueues and bounce buffers.
    pub const LINK_CONSOLE_DMA: Region = Region {
        name: "link_console_dma",
        size: 0x4_0000,
        secret: false,
        handoff: false,
        kind: RegionKind::Dma { device: &devices::CONSOLE, paddr_symbol: link::CONSOLE_DMA_PADDR_SYMBOL },
        purpose: "virtqueues and buffers of the console: bytes to and from the proxy",
    };
    /// The disk's registers.
    pub const LEDGER_BLK_MMIO: Region = Region {
        name: "ledger_blk_mmio",
        size: 0x1000,
        secret: false,
        handoff: false,
        kind: RegionKind::Mmio { device: &devices::BLK },
        purpose: "virtio-mmio registers of the ledger's disk",
    };
    /// The disk's virtqueues and sector buffers. Secret: the node journal (the identity seed)
    /// passes through it on its way to the disk.
    pub const LEDGER_BLK_DMA: Region = Region {
        name: "ledger_blk_dma",
        size: 0x4_0000,
        secret: true,
        handoff: false,
        kind: RegionKind::Dma { device: &devices::BLK, paddr_symbol: ledger::BLK_DMA_PADDR_SYMBOL },
        purpose: "virtqueues and sector buffers of the ledger's disk",
    };
    /// The entropy source's registers.
    pub const LEDGER_RNG_MMIO: Region = Region {
        name: "ledger_rng_mmio",
        size: 0x1000,
        secret: false,
        handoff: false,
        kind: RegionKind::Mmio { device: &devices::RNG },
        purpose: "virtio-mmio registers of the entropy source",
    };
    /// The entropy source's virtqueue and buffer. Secret: the bytes the device writes here
    /// become key material.
    pub const LEDGER_RNG_DMA: Region = Region {
        name: "ledger_rng_dma",
        size: 0x1000,
        secret: true,
        handoff: false,
        kind: RegionKind::Dma { device: &devices::RNG, paddr_symbol: ledger::RNG_DMA_PADDR_SYMBOL },
        purpose: "virtqueue and buffer of the entropy source: the bytes key generation uses",
    };
    /// The real-time clock's registers, mapped read only.
    pub const LEDGER_RTC_MMIO: Region = Region {
        name: "ledger_rtc_mmio",
        size: 0x1000,
        secret: false,
        handoff: false,
        kind: RegionKind::Mmio { device: &devices::RTC },
        purpose: "PL031 registers of the machine's real-time clock (read only)",
    };
    /// The request/response buffer of `link` and `lender` (layout: [`buffer`](crate::buffer)).
    pub const LINK_LENDER_BUFFER: Region = Region {
        name: "link_lender_buffer",
        size: buffer::SIZE,
        secret: false,
        handoff: false,
        kind: RegionKind::Ram,
        purpose: "one lender request frame from link, then the lender's response frame",
    };
    /// The ledger port's buffer (layout: [`ledger_port`](crate::ledger_port)).
    pub const LENDER_LEDGER_BUFFER: Region = Region {
        name: "lender_ledger_buffer",
        size: ledger_port::BUFFER_SIZE,
        secret: false,
        handoff: false,
        kind: RegionKind::Ram,
        purpose: "one ledger-port request from lender, then the ledger's reply",
    };
    /// The pool: the memory of the lendable blocks, mapped into `lender` only.
    pub const LENDER_POOL: Region = Region {
        name: "lender_pool",
        size: lender::POOL_SIZE,
        secret: false,
        handoff: false,
        kind: RegionKind::Ram,
        purpose: "the lender's pool of 2 MiB blocks, zeroed by the lender's scrub",
    };
    /// The lender disk's registers.
    pub const LENDER_BLK_MMIO: Region = Region {
        name: "lender_blk_mmio",
        size: 0x1000,
        secret: false,
        handoff: false,
        kind: RegionKind::Mmio { device: &devices::LENDER_BLK },
        purpose: "virtio-mmio registers of the lender's disk",
    };
    /// The lender disk's virtqueues and sector buffers.
    pub const LENDER_BLK_DMA: Region = Region {
        name: "lender_blk_dma",
        size: 0x4_0000,
        secret: false,
        handoff: false,
        kind: RegionKind::Dma { device: &devices::LENDER_BLK, paddr_symbol: lender::BLK_DMA_PADDR_SYMBOL },
        purpose: "virtqueues and sector buffers of the lender's disk",
    };
    /// The request/response buffer of `link` and `attest` (layout: [`buffer`](crate::buffer)).
    pub const LINK_ATTEST_BUFFER: Region = Region {
        name: "link_attest_buffer",
        size: buffer::SIZE,
        secret: false,
        handoff: false,
        kind: RegionKind::Ram,
        purpose: "one attest request frame from link, then the attest PD's response frame",
    };
    /// The attest PD's heap: its attestation key and certificate.
    pub const ATTEST_STATE: Region = Region {
        name: "attest_state",
        size: attest::STATE_SIZE,
        secret: true,
        handoff: false,
        kind: RegionKind::Ram,
        purpose: "the attest PD's heap: the attestation key",
    };
    /// The attest PD's ledger port (layout: [`ledger_port`](crate::ledger_port)). It carries the
    /// attestation key once, from `ledger` to `attest`, which wipes it.
    pub const ATTEST_LEDGER_BUFFER: Region = Region {
        name: "attest_ledger_buffer",
        size: ledger_port::BUFFER_SIZE,
        secret: false,
        handoff: true,
        kind: RegionKind::Ram,
        purpose: "one ledger-port request from attest, then the ledger's reply (once: the attestation key)",
    };
}

/// The ledger PD's disk (virtio-blk, [`devices::BLK`]): two journal areas
/// (`ppn_journal::block`), each with its own superblocks. `ppn image run` creates the disk
/// file, sparse and zeroed, when it is missing; the first boot writes the identity into it.
pub mod disk {
    use ppn_journal::block::{Area, SECTOR};

    /// The disk's size in bytes.
    pub const SIZE_BYTES: u64 = 64 << 20;
    /// In sectors.
    pub const SECTORS: u64 = SIZE_BYTES / SECTOR as u64;
    /// The node journal: the identity seed and the boot records (64 KiB).
    pub const NODE_JOURNAL: Area = Area { tag: 1, first: 0, sectors: 128 };
    /// The ledger journal: the rest of the disk.
    pub const LEDGER_JOURNAL: Area =
        Area { tag: 2, first: NODE_JOURNAL.first + NODE_JOURNAL.sectors, sectors: SECTORS - NODE_JOURNAL.sectors };

    const _: () = assert!(LEDGER_JOURNAL.first + LEDGER_JOURNAL.sectors <= SECTORS);
}

/// The lender PD's disk (virtio-blk, [`devices::LENDER_BLK`]): one journal area, the lender's
/// journal (`ppn_lender`), with its own superblocks. A separate disk file from the ledger's.
pub mod lender_disk {
    use ppn_journal::block::{Area, SECTOR};

    /// The disk's size in bytes.
    pub const SIZE_BYTES: u64 = 16 << 20;
    /// In sectors.
    pub const SECTORS: u64 = SIZE_BYTES / SECTOR as u64;
    /// The lender journal: the whole disk (tag 3: never mistaken for a ledger disk's areas).
    pub const LENDER_JOURNAL: Area = Area { tag: 3, first: 0, sectors: SECTORS };
}

/// The request/response buffer a service PD shares with `link`, in the style of sDDF's shared
/// queues: fixed offsets, little-endian fields, one writer at a time.
///
/// | offset | size | field | |
/// | --- | --- | --- | --- |
/// | 0 | 4 | `len` | `u32` LE: bytes of the frame at `FRAME_OFFSET`, `0..=MAX_FRAME_LEN` |
/// | 4 | 60 | reserved | written as zero, ignored when read |
/// | 64 | 16384 | `frame` | one `ppn-wire` frame (header and body, no COBS); bytes past `len` are undefined |
/// | 16448 | 4032 | unused | pads the region to whole pages |
///
/// The exchange is one protected procedure call (PPC): `link` writes the request frame, then
/// `len`, then calls the service PD with label [`CALL_FRAME`] and no message registers. The
/// callee reads `len` once, refuses a value over `MAX_FRAME_LEN`, copies the frame into its own
/// memory, and only then validates and handles it (the caller can rewrite shared memory at any
/// time). It writes the response frame and its `len` and returns label [`REPLY_FRAME`]. `link`
/// in turn reads `len` once, bounds it, and copies the response out before framing it for the
/// stream. A call with any other label is returned [`REPLY_NONE`] with the buffer untouched.
pub mod buffer {
    use super::{MAX_FRAME_LEN, PAGE_SIZE};

    /// Offset of the `len` field.
    pub const LEN_OFFSET: usize = 0;
    /// Size of the `len` field (`u32`, little-endian).
    pub const LEN_SIZE: usize = 4;
    /// Offset of the reserved bytes.
    pub const RESERVED_OFFSET: usize = LEN_OFFSET + LEN_SIZE;
    /// Offset of the frame: `len` and the reserved bytes fill the first 64-byte cache line.
    pub const FRAME_OFFSET: usize = 64;
    /// Bytes of reserved space between `len` and the frame.
    pub const RESERVED_SIZE: usize = FRAME_OFFSET - RESERVED_OFFSET;
    /// The largest frame the buffer holds: the wire protocol's `MAX_FRAME_LEN`.
    pub const FRAME_CAPACITY: usize = MAX_FRAME_LEN;
    /// The region's size: the header and a maximum frame, rounded up to whole pages (5 pages).
    pub const SIZE: u64 = (FRAME_OFFSET + FRAME_CAPACITY).next_multiple_of(PAGE_SIZE as usize) as u64;

    /// PPC label from `link`: "a request frame is in the buffer".
    pub const CALL_FRAME: u64 = 1;
    /// PPC reply label: "a response frame is in the buffer".
    pub const REPLY_FRAME: u64 = 1;
    /// PPC reply label: "unknown call label; nothing was written".
    pub const REPLY_NONE: u64 = 0;

    const _: () = assert!(FRAME_OFFSET + FRAME_CAPACITY <= SIZE as usize, "a maximum frame must fit");
    const _: () = assert!(FRAME_CAPACITY == 16 * 1024, "the wire protocol's frame limit is 16 KiB");
    const _: () = assert!(SIZE.is_multiple_of(PAGE_SIZE));
    const _: () = assert!(FRAME_OFFSET.is_multiple_of(64) && RESERVED_OFFSET <= FRAME_OFFSET);

    /// Decodes the `len` field; `None` if it exceeds the frame capacity (a hostile or broken
    /// writer), which the reader must answer as a bad frame without reading further.
    pub const fn decode_len(raw: [u8; LEN_SIZE]) -> Option<usize> {
        let len = u32::from_le_bytes(raw) as usize;
        if len <= FRAME_CAPACITY { Some(len) } else { None }
    }

    /// Encodes a frame length for the `len` field; `None` over the frame capacity.
    pub const fn encode_len(len: usize) -> Option<[u8; LEN_SIZE]> {
        if len <= FRAME_CAPACITY { Some((len as u32).to_le_bytes()) } else { None }
    }
}

/// What the `link` PD's code uses.
pub mod link {
    use super::{ChannelId, Device, buffer, devices, regions};

    /// The console's interrupt.
    pub const CONSOLE_IRQ: ChannelId = 0;
    /// The channel to `ledger`: `link` calls its protected procedure (PPC) with a request in
    /// [`LEDGER_BUFFER_VADDR`].
    pub const LEDGER_CHANNEL: ChannelId = 1;
    /// The channel to `lender`: `link` calls it (PPC) with a lender request in
    /// [`LENDER_BUFFER_VADDR`].
    pub const LENDER_CHANNEL: ChannelId = 2;
    /// The channel to `attest`: `link` calls it (PPC) with an attest request in
    /// [`ATTEST_BUFFER_VADDR`].
    pub const ATTEST_CHANNEL: ChannelId = 3;

    /// The buffer shared with `ledger` (layout: [`buffer`]).
    pub const LEDGER_BUFFER_VADDR: u64 = 0x1000_0000;
    /// Its size.
    pub const LEDGER_BUFFER_SIZE: u64 = buffer::SIZE;
    /// The buffer shared with `lender` (layout: [`buffer`]).
    pub const LENDER_BUFFER_VADDR: u64 = 0x1001_0000;
    /// Its size.
    pub const LENDER_BUFFER_SIZE: u64 = buffer::SIZE;
    /// The buffer shared with `attest` (layout: [`buffer`]).
    pub const ATTEST_BUFFER_VADDR: u64 = 0x1002_0000;

    /// The console's register page.
    pub const CONSOLE_MMIO_VADDR: u64 = 0x3000_0000;
    /// The console's registers (the transport's offset in its page).
    pub const CONSOLE_REGS_VADDR: u64 = CONSOLE_MMIO_VADDR + CONSOLE.page_offset();
    /// The console's DMA memory.
    pub const CONSOLE_DMA_VADDR: u64 = 0x4000_0000;
    /// Its size.
    pub const CONSOLE_DMA_SIZE: u64 = regions::LINK_CONSOLE_DMA.size;
    /// The symbol Microkit patches with the console DMA region's physical address.
    pub const CONSOLE_DMA_PADDR_SYMBOL: &str = "ppn_console_dma_paddr";

    /// The console device.
    pub const CONSOLE: Device = devices::CONSOLE;
}

/// What the `ledger` PD's code uses.
pub mod ledger {
    use super::{ChannelId, Device, buffer, devices, regions};

    /// The channel from `link`: `protected()` is entered with this id for every request.
    pub const LINK_CHANNEL: ChannelId = 0;
    /// The disk's interrupt.
    pub const BLK_IRQ: ChannelId = 1;
    /// The entropy source's interrupt.
    pub const RNG_IRQ: ChannelId = 2;
    /// The channel from `lender`: `protected()` is entered with this id for every ledger-port
    /// request ([`ledger_port`](crate::ledger_port)); a port request on any other channel is
    /// refused.
    pub const LENDER_CHANNEL: ChannelId = 3;
    /// The channel from `attest`: its ledger-port requests (the attestation key once, the time).
    pub const ATTEST_CHANNEL: ChannelId = 4;

    /// The buffer shared with `link` (layout: [`buffer`]).
    pub const REQUEST_BUFFER_VADDR: u64 = 0x1000_0000;
    /// Its size.
    pub const REQUEST_BUFFER_SIZE: u64 = buffer::SIZE;
    /// The ledger port's buffer, shared with `lender`.
    pub const LENDER_BUFFER_VADDR: u64 = 0x1001_0000;
    /// The ledger port's buffer, shared with `attest`.
    pub const ATTEST_BUFFER_VADDR: u64 = 0x1002_0000;

    /// The ledger's heap (secret: seed, keys, ledger state).
    pub const STATE_VADDR: u64 = 0x2000_0000;
    /// Its size.
    pub const STATE_SIZE: u64 = regions::LEDGER_STATE.size;

    /// The disk's register page.
    pub const BLK_MMIO_VADDR: u64 = 0x3000_0000;
    /// The disk's registers.
    pub const BLK_REGS_VADDR: u64 = BLK_MMIO_VADDR + BLK.page_offset();
    /// The entropy source's register page.
    pub const RNG_MMIO_VADDR: u64 = 0x3010_0000;
    /// The entropy source's registers.
    pub const RNG_REGS_VADDR: u64 = RNG_MMIO_VADDR + RNG.page_offset();

    /// The real-time clock's register page (mapped read only).
    pub const RTC_MMIO_VADDR: u64 = 0x3020_0000;
    /// The clock's registers.
    pub const RTC_REGS_VADDR: u64 = RTC_MMIO_VADDR + RTC.page_offset();

    /// The disk's DMA memory.
    pub const BLK_DMA_VADDR: u64 = 0x4000_0000;
    /// Its size.
    pub const BLK_DMA_SIZE: u64 = regions::LEDGER_BLK_DMA.size;
    /// The symbol Microkit patches with its physical address.
    pub const BLK_DMA_PADDR_SYMBOL: &str = "ppn_blk_dma_paddr";
    /// The entropy source's DMA memory.
    pub const RNG_DMA_VADDR: u64 = 0x4010_0000;
    /// Its size.
    pub const RNG_DMA_SIZE: u64 = regions::LEDGER_RNG_DMA.size;
    /// The symbol Microkit patches with its physical address.
    pub const RNG_DMA_PADDR_SYMBOL: &str = "ppn_rng_dma_paddr";

    /// The disk.
    pub const BLK: Device = devices::BLK;
    /// The entropy source.
    pub const RNG: Device = devices::RNG;
    /// The real-time clock.
    pub const RTC: Device = devices::RTC;
}

/// What the `lender` PD's code uses.
pub mod lender {
    use super::{ChannelId, Device, buffer, devices, ledger_port, regions};

    /// The channel from `link`: `protected()` is entered with this id for every lender request.
    pub const LINK_CHANNEL: ChannelId = 0;
    /// The channel to `ledger`: `lender` calls it (PPC) with a ledger-port request in
    /// [`LEDGER_BUFFER_VADDR`].
    pub const LEDGER_CHANNEL: ChannelId = 1;
    /// The disk's interrupt.
    pub const BLK_IRQ: ChannelId = 2;

    /// The buffer shared with `link` (layout: [`buffer`]).
    pub const REQUEST_BUFFER_VADDR: u64 = 0x1000_0000;
    /// Its size.
    pub const REQUEST_BUFFER_SIZE: u64 = buffer::SIZE;
    /// The ledger port's buffer, shared with `ledger` (layout: [`ledger_port`]).
    pub const LEDGER_BUFFER_VADDR: u64 = 0x1001_0000;
    /// Its size.
    pub const LEDGER_BUFFER_SIZE: u64 = ledger_port::BUFFER_SIZE;

    /// Bytes of one lender block (`ppn_lender::BLOCK_BYTES`; the PD checks they agree).
    pub const BLOCK_BYTES: u64 = 2 << 20;
    /// Blocks in the pool.
    pub const POOL_BLOCKS: u32 = 16;
    /// The pool's size: 32 MiB.
    pub const POOL_SIZE: u64 = POOL_BLOCKS as u64 * BLOCK_BYTES;
    /// The pool's mapping.
    pub const POOL_VADDR: u64 = 0x2000_0000;

    /// The disk's register page.
    pub const BLK_MMIO_VADDR: u64 = 0x3000_0000;
    /// The disk's registers.
    pub const BLK_REGS_VADDR: u64 = BLK_MMIO_VADDR + BLK.page_offset();
    /// The disk's DMA memory.
    pub const BLK_DMA_VADDR: u64 = 0x4000_0000;
    /// Its size.
    pub const BLK_DMA_SIZE: u64 = regions::LENDER_BLK_DMA.size;
    /// The symbol Microkit patches with its physical address.
    pub const BLK_DMA_PADDR_SYMBOL: &str = "ppn_lender_blk_dma_paddr";

    /// The disk.
    pub const BLK: Device = devices::LENDER_BLK;
}

/// What the `attest` PD's code uses.
pub mod attest {
    use super::{ChannelId, buffer, ledger_port};

    /// The channel from `link`: `protected()` is entered with this id for every attest request.
    pub const LINK_CHANNEL: ChannelId = 0;
    /// The channel to `ledger`: `attest` calls it (PPC) with a ledger-port request in
    /// [`LEDGER_BUFFER_VADDR`].
    pub const LEDGER_CHANNEL: ChannelId = 1;

    /// The buffer shared with `link` (layout: [`buffer`]).
    pub const REQUEST_BUFFER_VADDR: u64 = 0x1000_0000;
    /// Its size.
    pub const REQUEST_BUFFER_SIZE: u64 = buffer::SIZE;
    /// The ledger port's buffer, shared with `ledger` (layout: [`ledger_port`]).
    pub const LEDGER_BUFFER_VADDR: u64 = 0x1001_0000;
    /// Its size.
    pub const LEDGER_BUFFER_SIZE: u64 = ledger_port::BUFFER_SIZE;

    /// The heap (secret: the attestation key).
    pub const STATE_VADDR: u64 = 0x2000_0000;
    /// Its size: 1 MiB (a report is at most 2 KiB; the COSE and CBOR work allocates little).
    pub const STATE_SIZE: u64 = 0x10_0000;
}

/// Every protection domain.
pub const PDS: &[Pd] = &[pds::LINK, pds::LEDGER, pds::LENDER, pds::ATTEST];

/// Every device.
pub const DEVICES: &[Device] = &[devices::CONSOLE, devices::BLK, devices::RNG, devices::RTC, devices::LENDER_BLK];

/// Every memory region.
pub const REGIONS: &[Region] = &[
    regions::LINK_LEDGER_BUFFER,
    regions::LEDGER_STATE,
    regions::LINK_CONSOLE_MMIO,
    regions::LINK_CONSOLE_DMA,
    regions::LEDGER_BLK_MMIO,
    regions::LEDGER_BLK_DMA,
    regions::LEDGER_RNG_MMIO,
    regions::LEDGER_RNG_DMA,
    regions::LEDGER_RTC_MMIO,
    regions::LINK_LENDER_BUFFER,
    regions::LENDER_LEDGER_BUFFER,
    regions::LENDER_POOL,
    regions::LENDER_BLK_MMIO,
    regions::LENDER_BLK_DMA,
    regions::LINK_ATTEST_BUFFER,
    regions::ATTEST_STATE,
    regions::ATTEST_LEDGER_BUFFER,
];

/// Every mapping, grouped by PD.
pub const MAPPINGS: &[Mapping] = &[
    // link
    Mapping {
        pd: &pds::LINK,
        region: &regions::LINK_LEDGER_BUFFER,
        vaddr: link::LEDGER_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LINK,
        region: &regions::LINK_LENDER_BUFFER,
        vaddr: link::LENDER_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LINK,
        region: &regions::LINK_ATTEST_BUFFER,
        vaddr: link::ATTEST_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LINK,
        region: &regions::LINK_CONSOLE_MMIO,
        vaddr: link::CONSOLE_MMIO_VADDR,
        perms: Perms::RW,
        cached: false,
    },
    Mapping {
        pd: &pds::LINK,
        region: &regions::LINK_CONSOLE_DMA,
        vaddr: link::CONSOLE_DMA_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    // ledger
    Mapping {
        pd: &pds::LEDGER,
        region: &regions::LINK_LEDGER_BUFFER,
        vaddr: ledger::REQUEST_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LEDGER,
        region: &regions::LEDGER_STATE,
        vaddr: ledger::STATE_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LEDGER,
        region: &regions::LEDGER_BLK_MMIO,
        vaddr: ledger::BLK_MMIO_VADDR,
        perms: Perms::RW,
        cached: false,
    },
    Mapping {
        pd: &pds::LEDGER,
        region: &regions::LEDGER_RNG_MMIO,
        vaddr: ledger::RNG_MMIO_VADDR,
        perms: Perms::RW,
        cached: false,
    },
    Mapping {
        pd: &pds::LEDGER,
        region: &regions::LEDGER_RTC_MMIO,
        vaddr: ledger::RTC_MMIO_VADDR,
        perms: Perms::R,
        cached: false,
    },
    Mapping {
        pd: &pds::LEDGER,
        region: &regions::LEDGER_BLK_DMA,
        vaddr: ledger::BLK_DMA_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LEDGER,
        region: &regions::LEDGER_RNG_DMA,
        vaddr: ledger::RNG_DMA_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LEDGER,
        region: &regions::LENDER_LEDGER_BUFFER,
        vaddr: ledger::LENDER_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LEDGER,
        region: &regions::ATTEST_LEDGER_BUFFER,
        vaddr: ledger::ATTEST_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    // lender
    Mapping {
        pd: &pds::LENDER,
        region: &regions::LINK_LENDER_BUFFER,
        vaddr: lender::REQUEST_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LENDER,
        region: &regions::LENDER_LEDGER_BUFFER,
        vaddr: lender::LEDGER_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LENDER,
        region: &regions::LENDER_POOL,
        vaddr: lender::POOL_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::LENDER,
        region: &regions::LENDER_BLK_MMIO,
        vaddr: lender::BLK_MMIO_VADDR,
        perms: Perms::RW,
        cached: false,
    },
    Mapping {
        pd: &pds::LENDER,
        region: &regions::LENDER_BLK_DMA,
        vaddr: lender::BLK_DMA_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    // attest
    Mapping {
        pd: &pds::ATTEST,
        region: &regions::LINK_ATTEST_BUFFER,
        vaddr: attest::REQUEST_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::ATTEST,
        region: &regions::ATTEST_LEDGER_BUFFER,
        vaddr: attest::LEDGER_BUFFER_VADDR,
        perms: Perms::RW,
        cached: true,
    },
    Mapping {
        pd: &pds::ATTEST,
        region: &regions::ATTEST_STATE,
        vaddr: attest::STATE_VADDR,
        perms: Perms::RW,
        cached: true,
    },
];

/// Every channel between PDs.
pub const CHANNELS: &[Channel] = &[
    Channel {
        a: End { pd: &pds::LINK, id: link::LEDGER_CHANNEL, pp: true, notify: false },
        b: End { pd: &pds::LEDGER, id: ledger::LINK_CHANNEL, pp: false, notify: false },
        purpose: "link calls ledger (PPC) with one request frame in link_ledger_buffer",
    },
    Channel {
        a: End { pd: &pds::LINK, id: link::LENDER_CHANNEL, pp: true, notify: false },
        b: End { pd: &pds::LENDER, id: lender::LINK_CHANNEL, pp: false, notify: false },
        purpose: "link calls lender (PPC) with one lender request frame in link_lender_buffer",
    },
    Channel {
        a: End { pd: &pds::LENDER, id: lender::LEDGER_CHANNEL, pp: true, notify: false },
        b: End { pd: &pds::LEDGER, id: ledger::LENDER_CHANNEL, pp: false, notify: false },
        purpose: "lender calls ledger (PPC) with one ledger-port request in lender_ledger_buffer",
    },
    Channel {
        a: End { pd: &pds::LINK, id: link::ATTEST_CHANNEL, pp: true, notify: false },
        b: End { pd: &pds::ATTEST, id: attest::LINK_CHANNEL, pp: false, notify: false },
        purpose: "link calls attest (PPC) with one attest request frame in link_attest_buffer",
    },
    Channel {
        a: End { pd: &pds::ATTEST, id: attest::LEDGER_CHANNEL, pp: true, notify: false },
        b: End { pd: &pds::LEDGER, id: ledger::ATTEST_CHANNEL, pp: false, notify: false },
        purpose: "attest calls ledger (PPC) with one ledger-port request in attest_ledger_buffer",
    },
];

/// Every interrupt, each delivered to its device's driver.
pub const IRQS: &[Irq] = &[
    Irq { pd: &pds::LINK, device: &devices::CONSOLE, id: link::CONSOLE_IRQ, trigger: qemu_virt::VIRTIO_MMIO_TRIGGER },
    Irq { pd: &pds::LEDGER, device: &devices::BLK, id: ledger::BLK_IRQ, trigger: qemu_virt::VIRTIO_MMIO_TRIGGER },
    Irq { pd: &pds::LEDGER, device: &devices::RNG, id: ledger::RNG_IRQ, trigger: qemu_virt::VIRTIO_MMIO_TRIGGER },
    Irq {
        pd: &pds::LENDER,
        device: &devices::LENDER_BLK,
        id: lender::BLK_IRQ,
        trigger: qemu_virt::VIRTIO_MMIO_TRIGGER,
    },
];

/// Every physical-address patch: one per DMA region, into its driver.
pub const SETVARS: &[Setvar] = &[
    Setvar { pd: &pds::LINK, symbol: link::CONSOLE_DMA_PADDR_SYMBOL, region: &regions::LINK_CONSOLE_DMA },
    Setvar { pd: &pds::LEDGER, symbol: ledger::BLK_DMA_PADDR_SYMBOL, region: &regions::LEDGER_BLK_DMA },
    Setvar { pd: &pds::LEDGER, symbol: ledger::RNG_DMA_PADDR_SYMBOL, region: &regions::LEDGER_RNG_DMA },
    Setvar { pd: &pds::LENDER, symbol: lender::BLK_DMA_PADDR_SYMBOL, region: &regions::LENDER_BLK_DMA },
];

/// Which PD serves which wire service. A service missing here goes to `ledger`, which answers it
/// with a `NotImplemented` error frame.
pub const ROUTES: &[Route] = &[
    Route {
        service: Service::Node,
        pd: &pds::LEDGER,
        link_channel: link::LEDGER_CHANNEL,
        buffer: &regions::LINK_LEDGER_BUFFER,
    },
    Route {
        service: Service::Ledger,
        pd: &pds::LEDGER,
        link_channel: link::LEDGER_CHANNEL,
        buffer: &regions::LINK_LEDGER_BUFFER,
    },
    // Pairing admits a node into the ledger with the node's signing key: the ledger PD's.
    Route {
        service: Service::Pair,
        pd: &pds::LEDGER,
        link_channel: link::LEDGER_CHANNEL,
        buffer: &regions::LINK_LEDGER_BUFFER,
    },
    // The lender PD: pool, leases, scrubbing; it asks ledger for tokens and trust.
    Route {
        service: Service::Lender,
        pd: &pds::LENDER,
        link_channel: link::LENDER_CHANNEL,
        buffer: &regions::LINK_LENDER_BUFFER,
    },
    // The attest PD: provisioning statements and reports, by the key only it holds.
    Route {
        service: Service::Attest,
        pd: &pds::ATTEST,
        link_channel: link::ATTEST_CHANNEL,
        buffer: &regions::LINK_ATTEST_BUFFER,
    },
];

/// The PD named `name`.
pub fn pd(name: &str) -> Option<&'static Pd> {
    PDS.iter().find(|p| p.name == name)
}

/// The region named `name`.
pub fn region(name: &str) -> Option<&'static Region> {
    REGIONS.iter().find(|r| r.name == name)
}

/// The mapping of region `region` into PD `pd`, if the layout has one.
pub fn mapping(pd: &str, region: &str) -> Option<&'static Mapping> {
    MAPPINGS.iter().find(|m| m.pd.name == pd && m.region.name == region)
}

/// The mappings of region `region`, one per PD it is mapped into.
pub fn mappings_of(region: &str) -> impl Iterator<Item = &'static Mapping> + '_ {
    MAPPINGS.iter().filter(move |m| m.region.name == region)
}

/// The channel between PDs `a` and `b` (in either order), if the layout has one.
pub fn channel_between(a: &str, b: &str) -> Option<&'static Channel> {
    CHANNELS.iter().find(|c| (c.a.pd.name == a && c.b.pd.name == b) || (c.a.pd.name == b && c.b.pd.name == a))
}

/// Where `link` sends a request of `service`; `None` if no PD serves it.
pub fn route(service: Service) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.service == service)
}

#[cfg(test)]
mod tests;
