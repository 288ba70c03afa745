//! The few system calls std and tokio do not wrap: signalling process groups, asking the
//! kernel to kill a child when its parent dies, and the [`Reaper`] that kills fork mode's
//! process groups when the watchdog is killed outright.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

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

/// A small process, forked once, that SIGKILLs the process groups registered with it when the
/// watchdog dies, even by SIGKILL.
///
/// Fork mode starts a process per request. [`die_with_parent`] would make each die with the
/// watchdog, but a `pre_exec` hook makes std start the child with fork + exec instead of
/// `posix_spawn` (vfork): a fork copies the page tables of the whole multi-threaded watchdog
/// and both sides then take copy-on-write faults, about a third of a request's CPU time with
/// `cat` (BENCHMARKS.md). So the children are spawned plainly, each in a process group of its own,
/// and that group is registered here for as long as the request runs: the reaper holds the
/// read end of a pipe whose only write end is the watchdog's; when the watchdog is gone (the
/// pipe reaches end of file) it kills every group still registered and exits.
///
/// The reaper is the watchdog's child (reaped when the watchdog stops), runs in a process
/// group of its own (a kill of the watchdog's group does not end it before it has done its
/// work), ignores SIGTERM, SIGINT and SIGHUP, closes every other descriptor and only makes
/// async-signal-safe system calls on memory allocated before the fork. A group is registered
/// just after its spawn returns: a watchdog SIGKILLed between the two (microseconds) leaves
/// that one child behind.
pub(crate) struct Reaper {
    /// The write end of the pipe (non-blocking, close-on-exec); `None` once dropped.
    tx: Option<OwnedFd>,
    pid: libc::pid_t,
    /// Whether a failed registration was logged already.
    warned: AtomicBool,
}

impl Drop for Reaper {
    /// Closes the pipe (the reaper kills what is still registered and exits) and reaps the
    /// reaper, waiting at most 200 ms for it.
    fn drop(&mut self) {
        drop(self.tx.take());
        for _ in 0..200 {
            let mut status = 0;
            #[allow(unsafe_code)]
            // SAFETY: waitpid(2) on our own child, writing only `status`.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc != 0 {
                return; // reaped, or not ours to wait for any more
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The reaper's process name (`/proc/PID/comm`).
pub(crate) const REAPER_NAME: &std::ffi::CStr = c"faas-reaper";

/// The largest process id on Linux (`PID_MAX_LIMIT` on 64-bit), the bitmap's default size.
const PID_MAX_LIMIT: usize = 1 << 22;

impl Reaper {
    /// Forks the reaper.
    pub(crate) fn start() -> std::io::Result<Reaper> {
        // One bit per possible process group id: zeroed memory the kernel maps lazily, so only
        // the pages of ids actually used cost anything.
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(PID_MAX_LIMIT)
            .clamp(1024, PID_MAX_LIMIT);
        let mut bits = vec![0u64; pid_max.div_ceil(64)];
        let mut fds = [0 as libc::c_int; 2];
        #[allow(unsafe_code)]
        // SAFETY: pipe2(2) writes two descriptors into the array it is given.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        #[allow(unsafe_code)]
        // SAFETY: both descriptors were just created by pipe2 and are owned by nothing else.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        #[allow(unsafe_code)]
        // SAFETY: the child of a multi-threaded process may only make async-signal-safe calls
        // until it execs or exits: the child calls only setpgid, prctl, signal, chdir,
        // close_range/close, read, nanosleep, kill and _exit, and touches only the stack and
        // `bits`, allocated before the fork. It never returns from this function.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            #[allow(unsafe_code)]
            // SAFETY: see above.
            unsafe {
                reaper_main(rx.as_raw_fd(), &mut bits)
            }
        }
        drop(rx);
        #[allow(unsafe_code)]
        // SAFETY: fcntl(2) on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(tx.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(tx.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Ok(Reaper { tx: Some(tx), pid, warned: AtomicBool::new(false) })
    }

    /// Registers the process group `pgid`: the reaper kills it if the watchdog dies before
    /// [`Reaper::forget`]. Returns false if the message could not be sent (the reaper is gone,
    /// or its pipe is full).
    pub(crate) fn watch(&self, pgid: u32) -> bool {
        i32::try_from(pgid).is_ok_and(|p| p > 1 && self.send(p))
    }

    /// Unregisters the process group `pgid` (it ended, or was killed).
    pub(crate) fn forget(&self, pgid: u32) -> bool {
        i32::try_from(pgid).is_ok_and(|p| p > 1 && self.send(-p))
    }

    fn send(&self, msg: i32) -> bool {
        let Some(tx) = &self.tx else { return false };
        let b = msg.to_ne_bytes();
        #[allow(unsafe_code)]
        // SAFETY: write(2) from a 4-byte buffer on the stack; writes of at most PIPE_BUF bytes
        // to a pipe are atomic, so the reader never sees half a message.
        let n = unsafe { libc::write(tx.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        let ok = n == 4;
        if !ok && !self.warned.swap(true, Ordering::Relaxed) {
            crate::watchdog::log(format!(
                "the reaper (pid {}) did not take a message ({}): function processes may \
                 outlive a killed watchdog",
                self.pid,
                std::io::Error::last_os_error()
            ));
        }
        ok
    }
}

/// The reaper's loop. Async-signal-safe calls only (it runs in the fork of a multi-threaded
/// process); never returns.
#[allow(unsafe_code)]
unsafe fn reaper_main(rx: libc::c_int, bits: &mut [u64]) -> ! {
    // SAFETY (the whole function): setpgid, prctl, signal, chdir, close_range, close, read, nanosleep,
    // kill and _exit are async-signal-safe system calls; memory is the stack and `bits`.
    unsafe {
        libc::setpgid(0, 0);
        // Named so that `ps` tells it from the watchdog it was forked from.
        libc::prctl(libc::PR_SET_NAME, REAPER_NAME.as_ptr(), 0, 0, 0);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // No descriptor but the pipe: not the listener (the port must close with the
        // watchdog), not the pipe's write end (it would never reach end of file), not the
        // standard ones (a reader of the watchdog's output would wait for this process).
        libc::chdir(c"/".as_ptr());
        let (lo, hi) = (rx as libc::c_uint, libc::c_uint::MAX);
        let closed = (rx == 0 || libc::syscall(libc::SYS_close_range, 0, lo - 1, 0) == 0)
            && libc::syscall(libc::SYS_close_range, lo + 1, hi, 0) == 0;
        if !closed {
            for fd in 0..65536 {
                if fd != rx {
                    libc::close(fd);
                }
            }
        }
        let mut buf = [0u8; 4096];
        let mut have = 0usize;
        loop {
            let n = libc::read(rx, buf.as_mut_ptr().add(have).cast(), buf.len() - have);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            have += n as usize;
            let whole = have - have % 4;
            for m in buf[..whole].chunks_exact(4) {
                let v = i32::from_ne_bytes([m[0], m[1], m[2], m[3]]);
                let (p, on) = (v.unsigned_abs() as usize, v > 0);
                if let Some(w) = bits.get_mut(p / 64) {
                    if on {
                        *w |= 1 << (p % 64);
                    } else {
                        *w &= !(1 << (p % 64));
                    }
                }
            }
            buf.copy_within(whole..have, 0);
            have -= whole;
            // Under load messages come thousands a second: waking once per 2 ms to read them
            // in batches keeps this process's share small (the pipe holds thousands).
            let pause = libc::timespec { tv_sec: 0, tv_nsec: 2_000_000 };
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        for (i, w) in bits.iter().enumerate() {
            let mut w = *w;
            while w != 0 {
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                libc::kill(-((i * 64 + b) as libc::pid_t), libc::SIGKILL);
            }
        }
        libc::_exit(0)
    }
}
