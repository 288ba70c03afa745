//! The few system calls std and tokio do not wrap: signalling process groups and asking the
//! kernel to kill a child when its parent dies.

/// Sends `sig` to the process group `pgid`. Returns false if no such group exists.
pub(crate) fn kill_group(pgid: u32, sig: i32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else { return false };
    if pgid <= 1 {
        return false;
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a negative pid only sends a signal; it touches no memory of ours.
    let rc = unsafe { libc::kill(-pgid, sig) };
    rc == 0
}

/// Sends `sig` to the process `pid`. Returns false if no such process exists.
pub(crate) fn kill_pid(pid: u32, sig: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    if pid <= 1 {
        return false;
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) only sends a signal; it touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    rc == 0
}

/// Arranges for the child being spawned by `cmd` to receive `sig` when its parent dies, so
/// that killing a watchdog (or the process backend) never leaves its children behind.
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2),
    // which is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) use libc::{SIGKILL, SIGTERM};
