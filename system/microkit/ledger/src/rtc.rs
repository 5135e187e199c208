//! The machine's real-time clock, an Arm PL031 (QEMU `virt`: 0x0901_0000), mapped read only.
//! Its data register counts seconds since the Unix epoch; it is read once at start, and the
//! generic timer's uptime carries the clock forward from there, so it never steps back while
//! the PD runs.

use ppn_microkit_support::timer;

/// RTCDR: the current time in seconds.
const RTCDR: u64 = 0x000;

/// The ledger's wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start_unix_s: u64,
    start_ms: u64,
}

impl Clock {
    /// Reads the RTC.
    ///
    /// # Safety
    /// `regs` must be this PD's (at least read-only, uncached) mapping of the PL031's register
    /// page for the program's life.
    pub unsafe fn new(regs: u64) -> Self {
        // SAFETY: the caller guarantees `regs` maps the PL031 registers; RTCDR is a 32-bit
        // register at offset 0 whose read has no side effects.
        let secs = unsafe { core::ptr::read_volatile((regs + RTCDR) as *const u32) };
        Self { start_unix_s: u64::from(secs), start_ms: timer::uptime_ms() }
    }

    /// Seconds since the Unix epoch.
    pub fn now_unix_s(&self) -> u64 {
        self.start_unix_s + timer::uptime_ms().saturating_sub(self.start_ms) / 1000
    }
}
