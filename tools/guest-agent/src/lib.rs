//! PPN guest agent: the report protocol the in-guest agent speaks over virtio-serial (shared by
//! the agent and the host), and the builder of the minimal guest image that carries the agent.
//!
//! * [`report`]: the report and its framed, checksummed wire format with a resynchronising
//!   streaming decoder.
//! * [`image`]: `ensure(cache_dir, options)` builds (once) and caches a Debian kernel and an
//!   initramfs of busybox-static, the virtio modules and the agent.
//! * the `ppn-guest-agent` binary (src/bin/agent.rs): the agent itself, std only, built static
//!   for `x86_64-unknown-linux-musl`.
//!
//! * `boot_check` (feature `boot-check`, on in the guest's binary): the Rust half of the
//!   guest's verified boot (docs/attestation.md).
//!
//! See docs/guest.md.

pub mod agent;
#[cfg(feature = "boot-check")]
pub mod boot_check;
pub mod cpio;
pub mod image;
pub mod report;

/// The virtio-serial port name the agent looks for (and the host's `virtserialport` sets).
pub const PORT_NAME: &str = "org.ppnfabric.agent.0";
