//! Process hardening for the hosted TCB: what a Linux process can do to keep its secrets in.

use std::io;

/// Marks the process non-dumpable (no core files; `ptrace` and `/proc/PID/mem` closed to
/// processes of the same uid without `CAP_SYS_PTRACE`) and sets the core size limit to 0.
pub fn harden_process() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only and touches no memory of
    // ours; the unused arguments are passed as 0 as the man page asks.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `zero` is a valid, initialised rlimit that outlives the call, which only reads it.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process is currently dumpable (1) or not (0).
pub fn dumpable() -> io::Result<i32> {
    // SAFETY: prctl(PR_GET_DUMPABLE) takes no pointers and returns the flag.
    let rc = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hardening_makes_the_process_non_dumpable() {
        // Runs in the test process, which is then non-dumpable too; harmless for a test.
        super::harden_process().unwrap();
        assert_eq!(super::dumpable().unwrap(), 0);
    }
}
